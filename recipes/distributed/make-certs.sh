#!/bin/sh
# Makes the TLS material of a farm with openssl: a CA of its own, and a certificate signed by it
# for the master (HTTPS) and one for Redis (rediss://), each valid for the compose service name,
# localhost, 127.0.0.1 and every host name or address given.
#
#   ./make-certs.sh [-d DIR] [-f] HOST...     e.g. ./make-certs.sh farm.example.org 192.0.2.10
#
# DIR (default: tls, in the current folder) gets:
#   ca.crt                       the CA certificate: copy it to every worker and apt client
#   master.crt, redis.crt        the servers' certificates
#   private/ca.key               the CA's key: keep it, offline if you can; it signs new ones
#   private/master.key, private/redis.key
# private/ is readable by its owner only. The keys inside it are readable by anyone who can get
# in, so that the compose file can mount each one into its container, where the master (user
# pkgfarm) and Redis (user redis) must read them; nobody else on the host can.
# An existing DIR is left alone unless -f is given (then everything is made again).
set -eu

dir=tls
force=no
while getopts d:f opt; do
    case "$opt" in
        d) dir=$OPTARG ;;
        f) force=yes ;;
        *) echo "usage: $0 [-d DIR] [-f] HOST..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

for made in ca.crt master.crt redis.crt private/master.key private/redis.key; do
    if [ -d "$dir/$made" ]; then
        # docker makes a missing bind-mount source as an empty folder.
        echo "$dir/$made is a folder: docker made it because the deployment was started" \
             "before this script; remove $dir (rm -r $dir) and run this again" >&2
        exit 1
    fi
done
if [ -e "$dir/ca.crt" ] && [ "$force" = no ]; then
    echo "$dir/ca.crt exists; give -f to make everything again" >&2
    exit 1
fi
command -v openssl >/dev/null || { echo "openssl is missing (apt-get install openssl)" >&2; exit 1; }

umask 077
mkdir -p "$dir/private"
chmod 0755 "$dir"
chmod 0700 "$dir/private"
days=${PKGFARM_CERT_DAYS:-825}

openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=pkgfarm CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/private/ca.key" -out "$dir/ca.crt" 2>/dev/null

for service in master redis; do
    names="DNS:$service,DNS:localhost,IP:127.0.0.1"
    for host in "$@"; do
        case "$host" in
            *[!0-9.]*) case "$host" in *:*) names="$names,IP:$host" ;; *) names="$names,DNS:$host" ;; esac ;;
            *) names="$names,IP:$host" ;;
        esac
    done
    openssl req -newkey rsa:3072 -nodes -subj "/CN=$service" \
        -keyout "$dir/private/$service.key" -out "$dir/$service.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$names" \
        > "$dir/$service.ext"
    openssl x509 -req -in "$dir/$service.csr" -CA "$dir/ca.crt" -CAkey "$dir/private/ca.key" \
        -CAcreateserial -days "$days" -extfile "$dir/$service.ext" -out "$dir/$service.crt" 2>/dev/null
    rm -f "$dir/$service.csr" "$dir/$service.ext"
    chmod 0644 "$dir/$service.crt" "$dir/private/$service.key"
    echo "$dir/$service.crt: $names"
done
chmod 0644 "$dir/ca.crt"
rm -f "$dir/ca.srl"
echo "$dir/ca.crt: the CA to copy to workers and apt clients"
