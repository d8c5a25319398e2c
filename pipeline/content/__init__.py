"""The issue file: its schema, YAML that remembers line and column, and `newsletter new`."""
