"""Migrations of the contrib apps and django-q2 on MongoDB (ObjectIdAutoField ids).

Generated offline under the MongoDB settings (see README, MongoDB); never edited by hand."""
