"""Analysis: from collected runs to tables, verdicts, claims and figures. It reads the
records that runs write and never trains."""
