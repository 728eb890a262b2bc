"""The research application built on the library's public API: data readers,
item features, sequential and CF models, the training loop, studies, plots and
the ``tfllmer-fast`` command line. Nothing in the library imports it."""
