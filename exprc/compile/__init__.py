"""Native compilers behind one narrow interface: source in, loadable binary out."""
