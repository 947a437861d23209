"""Classifiers: decide whether a mention is safeguarding, disparaging or reputational."""
