"""Running arbstr as an operator: the CLI and arbstr up, the admin token, compose, cluster chaos and scale-out, observability, the dashboard, the mock upstream."""
