"""The researcher's side: connect to datasites, browse mock data, submit DP jobs."""
from . import jobs
from .connection import Site, connect
from .errors import ConnectError, JobDenied, JobTimeout, ResearcherError

__all__ = ["connect", "jobs", "Site", "ConnectError", "JobDenied", "JobTimeout", "ResearcherError"]
