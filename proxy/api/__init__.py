"""The HTTP edge: parse the request, call a service, render the answer. No business logic."""
