"""Scoring: per-image metrics (PSNR, SSIM, LPIPS) and distribution metrics (FID/KID, classifier accuracy)."""
