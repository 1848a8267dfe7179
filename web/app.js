document.getElementById("app").textContent = "Switchboard";
