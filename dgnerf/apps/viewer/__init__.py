"""`dgnerf view`: the interactive viewer in the browser and live driving from a webcam (docs/viewer.md).

session.py: what the page may ask (checked) and the renders; live.py: webcam frames -> pose and expression;
server.py: the page and its WebSocket; static/: the page itself.
"""
