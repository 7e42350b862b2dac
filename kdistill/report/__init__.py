"""Reports: results.json rendered as Markdown and as one self-contained HTML page with plots."""
