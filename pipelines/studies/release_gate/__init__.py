"""The release gate on real held-out images and on copies (issue 19): false removals and caught copies."""
