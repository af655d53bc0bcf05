"""The review console: server-rendered pages at /console on the access layer (`console.web`)."""
