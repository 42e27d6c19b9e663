"""The change feed: committed changes, in store revision order, to every watcher (WatchImages)."""
