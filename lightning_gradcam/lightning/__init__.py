"""The Lightning side: ``GradCAMCallback`` (when to run, which fixed samples, where to log,
state, failure policy), its argument checks, batch parsing and the loggers (sinks)."""
