"""What people read: progress, exports, the gallery."""
