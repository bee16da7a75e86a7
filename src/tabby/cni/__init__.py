"""CNI plumbing: the tabby-cni plugin, its wire protocol and the runtime-side helpers."""
