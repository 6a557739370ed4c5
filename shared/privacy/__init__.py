"""Privacy accounting, calibration and reporting: what a job costs and what that means."""
