"""Items: the catalogue of things kept in stock."""
