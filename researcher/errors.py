"""Errors a researcher sees, each saying what to do next."""
from shared.display import escape


class ResearcherError(RuntimeError):
    pass


class ConnectError(ResearcherError):
    pass


class JobDenied(ResearcherError):
    def __init__(self, request_id: str, reason: str):
        # the reason is someone else's text: shown with control characters made visible
        super().__init__(f"The data owner denied request {request_id[:8]}: "
                         f"{escape(str(reason), 1000)}")
        self.reason = reason


class JobTimeout(ResearcherError, TimeoutError):
    pass
