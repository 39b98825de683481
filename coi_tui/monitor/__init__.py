"""Host threat monitor: detectors, responder, audit log, event stream (see daemon.py)."""
