"""What chat UIs (Open WebUI, LibreChat) send besides a person's turn, read without I/O.

``background``: their housekeeping calls (titles, tags, follow-ups…), told apart from real
turns. ``retrieval``: the user's request and the sources, out of a message that Open WebUI
wrapped in its retrieval template. ``attachments``: files attached to a message the OpenAI
way (``file`` and ``image_url`` content parts).
"""
