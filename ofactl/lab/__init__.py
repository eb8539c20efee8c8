"""`ofactl lab`: a real fleet on this machine (network namespaces + systemd-nspawn hosts).

Use `ofactl.lab.api` (up, down, status, exec_in, fault) from Python.
"""
