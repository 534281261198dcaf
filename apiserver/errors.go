package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/validation"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// Error codes of the JSON error body.
const (
	codeUnauthorized   = "unauthorized"
	codeForbidden      = "forbidden"
	codeNotFound       = "not_found"
	codeInvalidRequest = "invalid_request"
	codeConflict       = "conflict"
	codeUnavailable    = "unavailable"
	codeInternal       = "internal"
)

// apiError is an error with its HTTP status, code and message for the
// caller, plus documented extra fields (such as existing_run_id).
type apiError struct {
	status  int
	code    string
	message string
	extra   map[string]any
	// cause is what the log says went wrong, never the caller (such as a
	// handler's panic); the apiError itself when nil.
	cause error
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errorf(status int, code, message string) *apiError {
	return &apiError{status: status, code: code, message: message}
}

// badRequest is a 400 invalid_request with a formatted message.
func badRequest(format string, args ...any) *apiError {
	return errorf(http.StatusBadRequest, codeInvalidRequest, fmt.Sprintf(format, args...))
}

// writeError is the one place that turns an error into an HTTP status and
// the JSON body {"error": {"code": ..., "message": ...}}. Errors from the
// Kubernetes API are mapped; anything unexpected is a 500 whose details go
// to the log (logError), not to the caller.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := classify(r, err)
	body := map[string]any{"code": ae.code, "message": ae.message}
	for k, v := range ae.extra {
		body[k] = v
	}
	if ae.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	if ae.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="jobrun"`)
	}
	writeJSON(w, ae.status, map[string]any{"error": body})
}

// classify maps err to the apiError a caller sees and logs it once (the
// console renders the same apiError as a page).
func classify(r *http.Request, err error) *apiError {
	var ae *apiError
	archiveErr, fromArchive := asArchiveError(err)
	switch {
	case fromArchive:
		ae = archiveErr
	case errors.As(err, &ae):
	case apierrors.IsNotFound(err):
		ae = errorf(http.StatusNotFound, codeNotFound, "not found")
	case apierrors.IsInvalid(err):
		// The API server refused what a request would store (a claim or a
		// field the CRD does not allow): the request's fault, not ours.
		ae = errorf(http.StatusBadRequest, codeInvalidRequest, "the request cannot be stored: "+clip(err.Error()))
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		ae = errorf(http.StatusConflict, codeConflict, "the resource changed or exists; retry")
	case apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err), apierrors.IsServiceUnavailable(err):
		ae = errorf(http.StatusServiceUnavailable, codeUnavailable, "the backend is busy; retry")
	case unreachable(err):
		ae = errorf(http.StatusServiceUnavailable, codeUnavailable, "the Kubernetes API server cannot be reached; retry")
	default:
		ae = errorf(http.StatusInternalServerError, codeInternal, "internal error")
	}
	if ae.cause != nil {
		err = ae.cause
	}
	logError(r, ae, err)
	return ae
}

// logError logs a request's error once, at the level it deserves: a 500 is
// a bug or a broken JobType, an error with its cause; a 503 is expected
// while the API server is out or a replica catches up, info with its cause;
// a 4xx is the caller's, a debug line.
func logError(r *http.Request, ae *apiError, cause error) {
	log := logf.FromContext(r.Context()).WithValues("method", clip(r.Method), "path", clip(r.URL.Path), "status", ae.status)
	switch {
	case ae.status == http.StatusServiceUnavailable:
		log.Info("request unavailable; the client may retry", "error", cause.Error())
	case ae.status >= 500:
		log.Error(cause, "request failed")
	default:
		log.V(1).Info("request refused", "code", ae.code, "message", ae.message)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // messages quote <token> and such as written
	_ = enc.Encode(v)
}

// validObjectName says whether name can name an object (a run, a project)
// at all. Ids from the outside are checked with it before they reach the
// API server, whose client refuses names such as "../x" with an error that
// would otherwise become a 500.
func validObjectName(name string) bool {
	return len(validation.IsDNS1123Subdomain(name)) == 0
}

// unreachable says whether err means the API server could not be reached
// or did not answer in time (down, restarting, a network cut): a 503 the
// client may retry, not a 500. Every transport failure of the client
// (refused, reset, timed out) is a net.Error (*url.Error); a response cut
// off while its body was read is a probable EOF.
func unreachable(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) || utilnet.IsProbableEOF(err) || errors.Is(err, context.DeadlineExceeded)
}
