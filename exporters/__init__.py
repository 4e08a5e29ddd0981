"""Where finished calls go. One sink per module, all behind ``exporters.base.RecordSink``."""
