"""The shipped scenarios (YAML). A package only so that installs carry the files with them."""
