"""tabby's nftables table: typed values (model), text (render)."""
