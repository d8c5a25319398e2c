"""The issue file: its schema, YAML that remembers line and column, `newsletter new`, and the starter
project `newsletter init` writes (the files in starter/)."""
