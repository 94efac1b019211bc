package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
)

// problemTypeBase is the prefix of the "type" URI of every error body. Clients
// tell errors apart by the last path segment, so these URIs are the ones Kask sends.
const problemTypeBase = "https://www.mediawiki.org/wiki/Kask/errors/"

// problem is an RFC 7807 "problem details" error body.
type problem struct {
	status   int
	Type     string `json:"type"`
	Title    string `json:"title"`
	Detail   string `json:"detail"`
	Instance string `json:"instance"`
}

func badRequest(instance string) problem {
	return problem{http.StatusBadRequest, problemTypeBase + "bad_request", "Bad request",
		"The request is not a GET, POST or DELETE of one key without a query string, or a POST without a body", instance}
}

func notFound(instance string) problem {
	return problem{http.StatusNotFound, problemTypeBase + "not_found", "Not found",
		"No value is stored under this key", instance}
}

func serverError(instance string) problem {
	return problem{http.StatusInternalServerError, problemTypeBase + "server_error", "Internal server error",
		"The storage backend failed to handle the request", instance}
}

func writeProblem(w http.ResponseWriter, p problem) {
	body, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		// A struct of four strings always encodes; this only guards against a future change.
		body = []byte(`{"type":"` + problemTypeBase + `server_error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.status)
	_, _ = w.Write(append(body, '\n'))
}

// requestID returns the caller's X-Request-ID, so log lines can be matched with the caller's own.
func requestID(r *http.Request) string {
	return r.Header.Get("X-Request-ID")
}

// keyHandler serves GET, POST and DELETE of <base URI><key>.
type keyHandler struct {
	store      Store
	baseURI    string
	defaultTTL int
	log        *Logger
}

// parseKey returns the key of a request path, or the problem to reply with.
// r.URL.Path is already percent-decoded, so an encoded slash (%2F) counts as a
// slash and makes the key invalid, as in Kask.
func (h *keyHandler) parseKey(r *http.Request) (string, *problem) {
	key, found := strings.CutPrefix(r.URL.Path, h.baseURI)
	if !found {
		p := notFound(r.URL.Path)
		return "", &p
	}
	if r.URL.RawQuery != "" {
		p := badRequest(r.URL.Path)
		return "", &p
	}
	if key == "" || strings.Contains(key, "/") {
		p := notFound(r.URL.Path)
		return "", &p
	}
	return key, nil
}

func (h *keyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, p := h.parseKey(r)
	if p != nil {
		writeProblem(w, *p)
		return
	}

	switch r.Method {
	case http.MethodGet:
		h.get(w, r, key)
	case http.MethodPost:
		h.post(w, r, key)
	case http.MethodDelete:
		h.delete(w, r, key)
	default:
		// PUT included: Kask stores with POST only.
		writeProblem(w, badRequest(r.URL.Path))
		h.log.Log(LevelDebug, requestID(r), "rejected method %s on %s", r.Method, r.URL.Path)
	}
}

func (h *keyHandler) get(w http.ResponseWriter, r *http.Request, key string) {
	value, err := h.store.Get(r.Context(), key)
	if errors.Is(err, ErrNotFound) {
		writeProblem(w, notFound(r.URL.Path))
		return
	}
	if err != nil {
		writeProblem(w, serverError(r.URL.Path))
		h.log.Log(LevelError, requestID(r), "reading key %q from Cassandra failed: %v", key, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(value); err != nil {
		h.log.Log(LevelWarning, requestID(r), "writing the response body for key %q failed: %v", key, err)
	}
}

func (h *keyHandler) post(w http.ResponseWriter, r *http.Request, key string) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeProblem(w, serverError(r.URL.Path))
		h.log.Log(LevelWarning, requestID(r), "reading the request body for key %q failed: %v", key, err)
		return
	}
	if len(body) == 0 {
		writeProblem(w, badRequest(r.URL.Path))
		h.log.Log(LevelDebug, requestID(r), "rejected POST with an empty body on %s", r.URL.Path)
		return
	}
	if err := h.store.Set(r.Context(), key, body, h.defaultTTL); err != nil {
		writeProblem(w, serverError(r.URL.Path))
		h.log.Log(LevelError, requestID(r), "writing key %q to Cassandra failed: %v", key, err)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

func (h *keyHandler) delete(w http.ResponseWriter, r *http.Request, key string) {
	if err := h.store.Delete(r.Context(), key); err != nil {
		writeProblem(w, serverError(r.URL.Path))
		h.log.Log(LevelError, requestID(r), "deleting key %q in Cassandra failed: %v", key, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// buildInfo is the body of /healthz. "implementation" distinguishes this stand-in from Kask.
type buildInfo struct {
	Implementation string `json:"implementation"`
	Service        string `json:"service"`
	Version        string `json:"version"`
	Git            string `json:"git"`
	BuildDate      string `json:"build_date"`
	BuildHost      string `json:"build_host"`
	GoVersion      string `json:"go_version"`
}

func currentBuildInfo(service string) buildInfo {
	return buildInfo{
		Implementation: implementation,
		Service:        service,
		Version:        version,
		Git:            gitCommit,
		BuildDate:      buildDate,
		BuildHost:      buildHost,
		GoVersion:      runtime.Version(),
	}
}

// healthzHandler always returns 200 while the process serves HTTP; like Kask's, it does not query Cassandra.
func healthzHandler(service string) http.HandlerFunc {
	body, _ := json.Marshal(currentBuildInfo(service))
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(body, '\n'))
	}
}
