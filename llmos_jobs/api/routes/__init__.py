"""One router per resource; each route authorises, calls LlmosClient or the CRUD
functions, and returns a public model."""
