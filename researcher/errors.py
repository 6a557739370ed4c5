"""Errors a researcher sees, each saying what to do next."""


class ResearcherError(RuntimeError):
    pass


class ConnectError(ResearcherError):
    pass


class JobDenied(ResearcherError):
    def __init__(self, request_id: str, reason: str):
        super().__init__(f"The data owner denied request {request_id[:8]}: {reason}")
        self.reason = reason


class JobTimeout(ResearcherError, TimeoutError):
    pass
