"""What the supervisor console's JSON twins (`/api/...`) answer, one module per area."""
