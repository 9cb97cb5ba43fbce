"""`concord bench` and the processes it starts: measurement code, kept out of the
production runtime so that nothing a coordinator node runs imports it."""
