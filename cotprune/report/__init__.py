"""Looking at results: `show` in the terminal, `report` as an HTML page with plots."""
