"""UM-Bridge model ``io_writer``: IO bound, mostly waiting for the disk.

Each call writes ``IO_WRITER_MB`` (default 64) MiB times the input ``x`` (0..20) to a new file in
``$TMPDIR`` in 4 MiB blocks, fsyncs it, drops it from the page cache (``posix_fadvise``) so the
read back comes from the disk, reads it back and deletes it. Returns the bytes written. Serves on
``$PORT``.
"""

import os
import tempfile

from _workload import WorkModel

MB = float(os.environ.get("IO_WRITER_MB", "64"))
BLOCK = 4 * 1024 * 1024
CHUNK = os.urandom(BLOCK)  # incompressible, in case the file system compresses


def write_read(x: float) -> float:
    total = int(MB * x * 1024 * 1024)
    fd, path = tempfile.mkstemp(prefix="io_writer-")
    try:
        done = 0
        while done < total:
            done += os.write(fd, CHUNK[: min(BLOCK, total - done)])
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.lseek(fd, 0, os.SEEK_SET)
        while os.read(fd, BLOCK):
            pass
    finally:
        os.close(fd)
        os.unlink(path)
    return float(total)


if __name__ == "__main__":
    from serving import serve

    serve([WorkModel("io_writer", write_read)])
