// The installable app: registers the service worker (sw.js), which keeps the shell for
// offline starts and shows push notifications.

if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((e) => {
    console.warn("service worker not registered", e);
  });
}
