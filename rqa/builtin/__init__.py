"""rqa's built-in components, registered through the ``rqa`` entry-point group like any plugin."""
