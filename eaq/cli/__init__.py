"""The ``eaq`` command line: a thin layer over the library."""
