"""slkd-bench: method x seed comparisons and their reports."""
