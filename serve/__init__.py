"""Ray Serve inference graph behind an HTTP API and a web page: portrait → triplane → frames driven by
a video or an expression, from any camera.
"""
