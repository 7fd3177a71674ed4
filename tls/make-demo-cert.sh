#!/bin/sh
# Makes the demo certificate the shipped config.toml serves on its TLS listener
# (127.0.0.1:5061): tls/demo.crt and tls/demo.key, a self-signed ECDSA P-256 certificate for
# 127.0.0.1 and localhost, valid 10 years.
#
# A demo key, public, never for production: see README.md next to this script.
#
# Run from anywhere: sh tls/make-demo-cert.sh   (needs openssl 1.1.1 or later for -addext)
set -eu
cd "$(dirname "$0")"
openssl req -x509 -new -nodes \
    -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -days 3650 \
    -subj "/CN=siplb demo (published key, not for production)" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout demo.key -out demo.crt
# The key is published in the repository anyway; readable by all, so an image or a service user
# other than the one who ran this script can read it.
chmod 644 demo.key
openssl x509 -in demo.crt -noout -subject -ext subjectAltName -enddate
