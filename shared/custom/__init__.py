"""Custom syft functions: code a researcher wrote, read by the owner and run in a sandbox.

Nothing here imports syft or ``datasite``: the researcher's side (``jobs.Custom``), the owner's
side and the sandboxed process all use it.

* :mod:`.summary`: a static summary of the code for the owner's review (imports, DP calls,
  what it returns) and the researcher's declared privacy cost.
* :mod:`.handle`: the accounted ``dp`` handle a function may take, whose OpenDP measurements
  are counted, so the spend is measured, not only declared.
* :mod:`.output`: the only way a result leaves the sandbox: plain values, numpy, pandas, skops
  and torch state dicts, never pickle.
* :mod:`.child`: the process that runs inside the sandbox.
"""
