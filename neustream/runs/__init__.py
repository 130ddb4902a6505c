"""One run = spec -> set-up -> engine -> record, for every family (what verbs and rules call)."""
