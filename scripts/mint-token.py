#!/usr/bin/env python3
"""Prints an HS256 access token for playback-syncd: mint-token.py USER [TTL_SECONDS] [COUNTRY].
Uses PLAYBACK_JWT_SECRET or the daemon's development secret (for local use and tests)."""
import base64, hashlib, hmac, json, os, sys, time

DEV_SECRET = "playback-sync-development-secret-do-not-use-in-production"

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def mint(user: str, ttl: int = 3600, country: str | None = None, secret: str | None = None) -> str:
    secret = secret or os.environ.get("PLAYBACK_JWT_SECRET") or DEV_SECRET
    claims = {"sub": user, "exp": int(time.time()) + ttl}
    if country:
        claims["country"] = country
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(mint(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3600, sys.argv[3] if len(sys.argv) > 3 else None))
