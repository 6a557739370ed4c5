"""Code shared by the datasite, the researcher and the jobs that run inside a datasite.

Never imports syft, `datasite` or `researcher`: it must run on a bare GPU machine.
"""
