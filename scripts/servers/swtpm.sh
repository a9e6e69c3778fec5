#!/usr/bin/env bash
# A throw-away software TPM 2.0 (swtpm) for MAIF's attestation tests and for trying attestation by hand.
#
#   swtpm.sh install                          install swtpm + tpm2-tools if missing (root: apt-get)
#   swtpm.sh start  WORKDIR [PORT]            manufacture (first time) and start on 127.0.0.1:PORT, PORT+1
#   swtpm.sh stop   WORKDIR [--purge]         TPM2_Shutdown, then stop only the PID this WORKDIR recorded
#   swtpm.sh status WORKDIR                   exit 0 when the swtpm of WORKDIR is running
#   swtpm.sh ek     WORKDIR OUT               RSA EK: OUT/ek.ctx ek.pub (TPM2B_PUBLIC) ekcert.der
#   swtpm.sh ak     WORKDIR OUT KIND          AK under the EK: OUT/ak.ctx ak.pub (TPM2B_PUBLIC) ak.pem ak.name;
#                                             KIND rsa (RSASSA-SHA256) rsapss ecc (P-256) ecc384 (P-384, SHA-384)
#   swtpm.sh signkey WORKDIR OUT              an UNRESTRICTED RSA signing key (a bad AK, for negative tests)
#   swtpm.sh quote  WORKDIR OUT NONCE_HEX [PCRS]   OUT/quote.msg (TPMS_ATTEST) quote.sig (TPMT_SIGNATURE)
#   swtpm.sh activate WORKDIR OUT CREDFILE    ActivateCredential with OUT/ak.ctx + OUT/ek.ctx -> OUT/activated.bin
#   swtpm.sh certify WORKDIR OUT              TPM2_Certify of the AK by itself -> OUT/certify.msg certify.sig
#   swtpm.sh persist WORKDIR OUT HANDLE       make OUT's AK persistent at HANDLE (later steps use the handle)
#   swtpm.sh reboot WORKDIR reset|resume      power-cycle: reset (Shutdown/Startup CLEAR: resetCount+1, transient
#                                             objects lost) or resume (Shutdown/Startup STATE: restartCount+1)
#   swtpm.sh extend WORKDIR PCR SHA256_HEX    extend one sha256 PCR
#   swtpm.sh pcrread WORKDIR [PCRS]           print PCR values (tpm2_pcrread YAML)
#
# WORKDIR holds state/ (the TPM's NVRAM), ca/ (the local CA that signed the EK certificate: root
# ca/swtpm-localca-rootca-cert.pem, intermediate ca/issuercert.pem), swtpm.pid, swtpm.log and env.
# The control port is always PORT+1 (the tss2 swtpm TCTI assumes it): parallel TPMs need their own pairs.
# Without a resource manager every tool leaves transient objects and sessions loaded, so each step flushes
# them, or the TPM soon fails with 0x902 "out of memory for object contexts".
set -euo pipefail

PACKAGES=(swtpm swtpm-tools tpm2-tools libtss2-tcti-swtpm0)
# libtss2-tcti-swtpm0 must be named: tpm2-tools does not pull in the swtpm TCTI.

usage() { sed -n '2,18p' "$0" >&2; exit 2; }

missing_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
  done
}

cmd_install() {
  local missing
  missing=$(missing_packages | paste -sd ' ')
  if [[ -z "$missing" ]]; then echo "swtpm and tpm2-tools already installed"; return 0; fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: $missing" >&2
    echo "install them as root with: apt-get install -y $missing" >&2
    return 1
  fi
  # shellcheck disable=SC2086
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y $missing; then
    # The package lists may be stale or absent on a fresh machine: refresh once, then retry.
    apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
  fi
}

load_env() {
  [[ -f "$1/env" ]] || { echo "no swtpm environment in $1 (run: swtpm.sh start $1)" >&2; exit 1; }
  # shellcheck disable=SC1091
  source "$1/env"
}

# The AK as tpm2-tools' -c wants it: its persistent handle once persisted, else its saved context.
ak_ref() { if [[ -f "$1/ak.handle" ]]; then cat "$1/ak.handle"; else echo "$1/ak.ctx"; fi; }

flush_all() { tpm2_flushcontext -t >/dev/null 2>&1 || true; tpm2_flushcontext -s >/dev/null 2>&1 || true; }

running_pid() {
  local pidfile="$1/swtpm.pid"
  [[ -f "$pidfile" ]] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

manufacture() {
  local workdir=$1 ca="$1/ca"
  mkdir -p "$workdir/state" "$ca"
  # The local CA lives inside WORKDIR, never in the system-wide /var/lib/swtpm-localca.
  printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
    "$ca" "$ca" "$ca" "$ca" > "$ca/swtpm-localca.conf"
  printf 'create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n' \
    "$(command -v swtpm_localca)" "$ca/swtpm-localca.conf" /etc/swtpm-localca.options > "$ca/swtpm_setup.conf"
  swtpm_setup --tpm2 --tpmstate "$workdir/state" --config "$ca/swtpm_setup.conf" \
    --create-ek-cert --create-platform-cert --overwrite --logfile "$workdir/swtpm_setup.log" >/dev/null
}

cmd_start() {
  local workdir=${1:?usage: swtpm.sh start WORKDIR [PORT]} port=${2:-2321}
  mkdir -p "$workdir"
  workdir=$(cd "$workdir" && pwd)
  if pid=$(running_pid "$workdir"); then echo "swtpm of $workdir already running (pid $pid)" >&2; return 1; fi
  [[ -f "$workdir/state/tpm2-00.permall" ]] || manufacture "$workdir"
  swtpm socket --tpm2 --tpmstate dir="$workdir/state" \
    --server type=tcp,port="$port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port="$((port + 1))",bindaddr=127.0.0.1 \
    --flags not-need-init --pid file="$workdir/swtpm.pid" --log file="$workdir/swtpm.log" --daemon
  echo "export TPM2TOOLS_TCTI=\"swtpm:host=127.0.0.1,port=$port\"" > "$workdir/env"
  load_env "$workdir"
  local attempt
  for attempt in $(seq 1 50); do
    if tpm2_startup -c 2>/dev/null; then
      # Test TPM only: an earlier stop without TPM2_Shutdown counts as a dictionary attack, and after a
      # few the DA-protected AK is locked out (0x921). Clear the counter and disable lockout.
      tpm2_dictionarylockout -c >/dev/null
      tpm2_dictionarylockout -s -n 1000 -t 0 -l 0 >/dev/null
      echo "$TPM2TOOLS_TCTI"
      return 0
    fi
    sleep 0.1
  done
  echo "swtpm did not answer on 127.0.0.1:$port after $attempt tries" >&2
  return 1
}

cmd_stop() {
  local workdir=${1:?usage: swtpm.sh stop WORKDIR [--purge]} pid
  if pid=$(running_pid "$workdir"); then
    # Orderly TPM2_Shutdown first, so the next start is not counted as an unorderly shutdown.
    (load_env "$workdir" && tpm2_shutdown -c >/dev/null 2>&1) || true
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  fi
  rm -f "$workdir/swtpm.pid"
  if [[ "${2:-}" == "--purge" ]]; then rm -rf "$workdir"; fi
}

cmd_ek() {
  local workdir=${1:?} out=${2:?}
  load_env "$workdir"; mkdir -p "$out"
  # The default RSA-2048 EK template is deterministic: this is the key swtpm_setup certified into NV.
  tpm2_createek -c "$out/ek.ctx" -G rsa -u "$out/ek.pub" >/dev/null
  flush_all
  tpm2_nvread 0x01c00002 -C o -o "$out/ekcert.der" >/dev/null 2>&1
  flush_all
}

cmd_ak() {
  local workdir=${1:?} out=${2:?} kind=${3:-rsa}
  load_env "$workdir"
  local hash=sha256 scheme
  case "$kind" in
    rsa) scheme=rsassa; set -- -G rsa ;;
    rsapss) scheme=rsapss; set -- -G rsa ;;
    ecc) scheme=ecdsa; set -- -G ecc ;;
    ecc384) hash=sha384; scheme=ecdsa; set -- -G ecc384 ;;
    *) echo "AK kind must be rsa, rsapss, ecc or ecc384" >&2; return 2 ;;
  esac
  # A restricted AK signs with its one fixed scheme: later quotes must ask for the same scheme and hash.
  echo "$hash $scheme" > "$out/ak.scheme"
  set -- "$@" -g "$hash" -s "$scheme"
  tpm2_createak -C "$out/ek.ctx" -c "$out/ak.ctx" "$@" -u "$out/ak.pem" -f pem -n "$out/ak.name" >/dev/null
  flush_all
  tpm2_readpublic -c "$out/ak.ctx" -o "$out/ak.pub" -f tss >/dev/null
  flush_all
}

cmd_signkey() {
  local workdir=${1:?} out=${2:?}
  load_env "$workdir"; mkdir -p "$out"
  # Not restricted: such a key signs any digest, including a forged TPMS_ATTEST. A verifier must refuse it.
  tpm2_createprimary -C o -g sha256 -G rsa -c "$out/primary.ctx" >/dev/null
  flush_all
  tpm2_create -C "$out/primary.ctx" -G rsa2048:rsassa-sha256 -g sha256 \
    -a "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign" -u "$out/key.pub" -r "$out/key.priv" >/dev/null
  flush_all
  tpm2_load -C "$out/primary.ctx" -u "$out/key.pub" -r "$out/key.priv" -c "$out/ak.ctx" >/dev/null
  flush_all
  tpm2_readpublic -c "$out/ak.ctx" -o "$out/ak.pub" -f tss >/dev/null
  tpm2_readpublic -c "$out/ak.ctx" -o "$out/ak.pem" -f pem >/dev/null
  flush_all
}

cmd_quote() {
  local workdir=${1:?} out=${2:?} nonce=${3:?} pcrs=${4:-sha256:0,1,2,3,7}
  load_env "$workdir"
  local hash=sha256 scheme=rsassa
  if [[ -f "$out/ak.scheme" ]]; then read -r hash scheme < "$out/ak.scheme"; fi
  tpm2_quote -c "$(ak_ref "$out")" -l "$pcrs" -q "$nonce" -g "$hash" --scheme "$scheme" -m "$out/quote.msg" -s "$out/quote.sig" >/dev/null
  flush_all
}

cmd_activate() {
  local workdir=${1:?} out=${2:?} credfile=${3:?}
  load_env "$workdir"
  # The EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT): satisfy it with a policy session.
  local session="$out/activate.session"
  tpm2_startauthsession --policy-session -S "$session" >/dev/null
  tpm2_policysecret -S "$session" -c e >/dev/null
  local status=0
  tpm2_activatecredential -c "$(ak_ref "$out")" -C "$out/ek.ctx" -i "$credfile" -o "$out/activated.bin" \
    -P "session:$session" >/dev/null || status=$?
  tpm2_flushcontext "$session" >/dev/null 2>&1 || true
  rm -f "$session"
  flush_all
  return "$status"
}

cmd_certify() {
  local workdir=${1:?} out=${2:?}
  load_env "$workdir"
  # tpm2-tools 5.4 cannot pass qualifying data to TPM2_Certify: extraData stays empty.
  tpm2_certify -c "$(ak_ref "$out")" -C "$(ak_ref "$out")" -g sha256 \
    -o "$out/certify.msg" -s "$out/certify.sig" >/dev/null
  flush_all
}

cmd_persist() {
  local workdir=${1:?} out=${2:?} handle=${3:?}
  load_env "$workdir"
  tpm2_evictcontrol -C o -c "$out/ak.ctx" "$handle" >/dev/null
  flush_all
  echo "$handle" > "$out/ak.handle"
}

cmd_reboot() {
  local workdir=${1:?} kind=${2:?usage: swtpm.sh reboot WORKDIR reset|resume} port
  load_env "$workdir"
  port=${TPM2TOOLS_TCTI##*port=}
  case "$kind" in
    reset) tpm2_shutdown -c; swtpm_ioctl --tcp "127.0.0.1:$((port + 1))" -i; tpm2_startup -c ;;
    resume) tpm2_shutdown; swtpm_ioctl --tcp "127.0.0.1:$((port + 1))" -i; tpm2_startup ;;
    *) echo "reboot kind must be reset or resume" >&2; return 2 ;;
  esac
}

cmd_extend() {
  local workdir=${1:?} pcr=${2:?} digest=${3:?}
  load_env "$workdir"
  tpm2_pcrextend "$pcr:sha256=$digest"
}

cmd_pcrread() {
  local workdir=${1:?} pcrs=${2:-sha256:0,1,2,3,7}
  load_env "$workdir"
  tpm2_pcrread "$pcrs"
}

main() {
  local command=${1:-}
  [[ -n "$command" ]] || usage
  shift
  case "$command" in
    install) cmd_install ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) running_pid "${1:?usage: swtpm.sh status WORKDIR}" >/dev/null ;;
    ek) cmd_ek "$@" ;;
    ak) cmd_ak "$@" ;;
    signkey) cmd_signkey "$@" ;;
    quote) cmd_quote "$@" ;;
    activate) cmd_activate "$@" ;;
    certify) cmd_certify "$@" ;;
    persist) cmd_persist "$@" ;;
    reboot) cmd_reboot "$@" ;;
    extend) cmd_extend "$@" ;;
    pcrread) cmd_pcrread "$@" ;;
    *) usage ;;
  esac
}

main "$@"
