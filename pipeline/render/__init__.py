"""Issue → email, once per issue: Jinja2 + MJML, Markdown, links, the MIME message, pre-send checks."""
