"""campaignd: a headless daemon that runs outreach campaigns for other programs."""

__version__ = "0.1.0"
