"""The launchers' side: register, lease and exit over HTTP or through a shared directory, and the
health probes of model servers at registration and after a broken call.
"""
