"""DuckDB over the lake: views, formatting, saved queries."""
