"""One router per resource. Routes validate, authorise and call a query function; no SQL here."""
