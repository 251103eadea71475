"""A handler module that fails while importing: an init error."""
raise ImportError("this module cannot be imported (on purpose)")
